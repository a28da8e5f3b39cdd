from __future__ import annotations

import pytest
import yaml

from capi_provider.bootstrap.render import (
    HostInput,
    NicInput,
    SeedInputs,
    SeedTemplateError,
    render_seed,
)

CAPBK_LIKE = """## template: jinja
#cloud-config
write_files:
-   path: /run/kubeadm/kubeadm-join-config.yaml
    content: |
      nodeRegistration:
        name: '{{ ds.meta_data.local_hostname }}'
        kubeletExtraArgs:
        - name: provider-id
          value: '{{ ds.meta_data.provider_id }}'
runcmd:
  - kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml  && {SENTINEL}
""".replace("{SENTINEL}", "echo success > /run/cluster-api/bootstrap-success.complete")


def inputs(**kw) -> SeedInputs:
    base = {
        "bootstrap_data": CAPBK_LIKE,
        "instance_id": "9f1c-uid",
        "hostname": "workers-abc12",
        "provider_id": "baremetal://default/rack1-srv07/9f1c-uid",
        "cluster_name": "c1",
        "machine_name": "workers-abc12",
        "machine_namespace": "default",
        "host": HostInput(
            name="rack1-srv07",
            nics=(
                NicInput("eno1", "0C:C4:7A:12:34:56", ip="10.0.0.17/24", gateway="10.0.0.1"),
                NicInput("eno2", "0c:c4:7a:12:34:57"),
            ),
        ),
        "failure_domain": "rack-1",
    }
    base.update(kw)
    return SeedInputs(**base)


def test_user_data_is_the_bootstrap_data_verbatim_including_its_jinja() -> None:
    # Our renderer must not evaluate CAPBK's {{ ds.meta_data.* }}: cloud-init on the host does that.
    assert render_seed(inputs())["user-data"].decode() == CAPBK_LIKE + "\n"


def test_meta_data_carries_identity_for_cloud_init_jinja() -> None:
    meta = yaml.safe_load(render_seed(inputs())["meta-data"])
    assert meta == {
        "instance-id": "9f1c-uid",
        "local-hostname": "workers-abc12",
        "name": "workers-abc12",
        "provider-id": "baremetal://default/rack1-srv07/9f1c-uid",
        "providerid": "baremetal://default/rack1-srv07/9f1c-uid",
        "cluster-name": "c1",
        "machine-name": "workers-abc12",
        "machine-namespace": "default",
        "host-name": "rack1-srv07",
        "failure-domain": "rack-1",
    }


def test_meta_data_stays_valid_yaml_whatever_the_values_contain() -> None:
    meta = yaml.safe_load(render_seed(inputs(cluster_name="a: b # c\n- d"))["meta-data"])
    assert meta["cluster-name"] == "a: b # c\n- d"


def test_network_config_matches_nics_by_mac_with_static_or_dhcp() -> None:
    net = yaml.safe_load(render_seed(inputs())["network-config"])
    assert net == {
        "version": 2,
        "ethernets": {
            "eno1": {
                "match": {"macaddress": "0c:c4:7a:12:34:56"},
                "set-name": "eno1",
                "addresses": ["10.0.0.17/24"],
                "routes": [{"to": "default", "via": "10.0.0.1"}],
            },
            "eno2": {"match": {"macaddress": "0c:c4:7a:12:34:57"}, "set-name": "eno2", "dhcp4": True},
        },
    }


def test_network_config_without_nics_is_still_valid() -> None:
    net = yaml.safe_load(render_seed(inputs(host=HostInput(name="h")))["network-config"])
    assert net == {"version": 2, "ethernets": {}}


def test_operator_override_replaces_one_file() -> None:
    custom = "instance-id: {{ instance_id }}\nrack: {{ host.labels.rack }}\n"
    seed = render_seed(inputs(host=HostInput(name="h", labels={"rack": "r7"})), {"meta-data": custom})
    assert seed["meta-data"] == b"instance-id: 9f1c-uid\nrack: r7\n"
    # The other files keep the built-in templates.
    assert seed["user-data"].decode() == CAPBK_LIKE + "\n"


def test_undefined_variables_are_errors_not_empty_strings() -> None:
    with pytest.raises(SeedTemplateError, match=r"^seed template meta-data line 2: UndefinedError$"):
        render_seed(inputs(), {"meta-data": "instance-id: x\nlocal-hostname: {{ hostnme }}\n"})


def test_templates_are_sandboxed() -> None:
    with pytest.raises(SeedTemplateError, match="network-config"):
        render_seed(inputs(), {"network-config": "{{ ''.__class__.__mro__[1].__subclasses__() }}"})


def test_errors_never_echo_the_bootstrap_data() -> None:
    secret = "abcdef.0123456789abcdef"
    with pytest.raises(SeedTemplateError) as e:
        render_seed(
            inputs(bootstrap_data=f"token: {secret}"), {"user-data": "{{ bootstrap_data | nosuchfilter }}"}
        )
    assert secret not in str(e.value)
    assert secret not in repr(inputs(bootstrap_data=secret))


def test_unknown_override_keys_are_an_error_not_silently_ignored() -> None:
    with pytest.raises(SeedTemplateError, match="userdata"):
        render_seed(inputs(), {"userdata": "#cloud-config\n"})


@pytest.mark.parametrize(
    "bomb",
    ["{{ 'x' * 2**31 }}", "{{ [1] * 10**9 }}", "{{ 99 ** 99999999 }}", "{{ range(10**9) | list | length }}"],
)
def test_expressions_that_would_exhaust_the_controller_are_refused(bomb: str) -> None:
    with pytest.raises(SeedTemplateError) as e:
        render_seed(inputs(), {"user-data": "#cloud-config\n" + bomb + "\n"})
    assert e.value.file == "user-data" and e.value.line == 2
    assert e.value.kind in ("OverflowError", "SecurityError")
