"""kopf glue: importing this package registers every handler (one module per kind)."""

from capi_provider.controller import clusters, hosts, inventory, machines, startup, templates  # noqa: F401
