"""Pure decisions: no kopf, no Kubernetes client, no sockets. Everything here is unit-tested directly."""
