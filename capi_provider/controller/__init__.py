"""kopf glue: importing this package registers every handler (one module per kind)."""

from capi_provider.controller import clusters, hosts, inventory, machine_templates, machines, startup  # noqa: F401
