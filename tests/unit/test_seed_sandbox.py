"""Operator seed templates render in a child process inside CPU, memory and output limits."""

from __future__ import annotations

import asyncio

import pytest

from capi_provider.bootstrap.render import SeedTemplateError, render_seed
from capi_provider.bootstrap.sandbox import TemplateLimits, render_seed_bounded
from tests.unit.test_seed_render import inputs

LIMITS = TemplateLimits(cpu_seconds=2, memory_bytes=512 << 20, output_bytes=1 << 20, wall_seconds=30)


def test_an_operator_template_renders_in_the_child_like_in_process() -> None:
    overrides = {"meta-data": "instance-id: {{ instance_id }}\nrack: {{ host.labels.get('rack', 'none') }}\n"}
    assert asyncio.run(render_seed_bounded(inputs(), overrides, LIMITS)) == render_seed(inputs(), overrides)


@pytest.mark.parametrize(
    "bomb",
    [
        "{% for i in range(99999) %}{% for j in range(99999) %}xx{% endfor %}{% endfor %}",  # time and memory
        "{% for i in range(99999) %}{{ 'y' * 1000 }}{% endfor %}",  # 100 MB of output
    ],
)
def test_a_template_over_a_limit_fails_alone_without_its_message(bomb: str) -> None:
    with pytest.raises(SeedTemplateError) as e:
        asyncio.run(render_seed_bounded(inputs(), {"user-data": bomb}, LIMITS))
    assert e.value.kind.split()[0] in (
        "OutputTooLarge",
        "MemoryError",
        "CPUTimeLimitExceeded",
        "Timeout",
        "Killed",
    ), e.value
    assert "xx" not in str(e.value) and "yyy" not in str(e.value)


def test_the_default_templates_need_no_child() -> None:
    """Our own templates are trusted: no process per machine for them."""
    assert asyncio.run(render_seed_bounded(inputs(), None, LIMITS)) == render_seed(inputs())
