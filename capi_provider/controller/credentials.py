"""A host's secrets for the provisioner: BMC login, SSH key, Redfish CA bundle.

Read with GET and cached (polling a BMC must not cost an API request each time); a cached Secret is dropped
when the BMC or sshd rejects what it holds, so a rotated password or key is read again on the next try.
There is no Secret watch: the controller needs `get` on Secrets, never `list`/`watch` of every Secret in
the cluster.

A BMC credentials Secret is used only for the hosts it is bound to (an ownerReference to the
BareMetalHost; see decisions/secrets.py).
"""

from __future__ import annotations

from typing import Protocol

from capi_provider.decisions.secrets import SecretData, bound_to_host
from capi_provider.objkey import ObjKey
from capi_provider.provisioner.base import ProvisionerError, Target

CA_BUNDLE_KEY = "ca.crt"


class SecretReader(Protocol):
    async def get_secret(self, namespace: str, name: str) -> SecretData | None: ...

    async def get_configmap(self, namespace: str, name: str) -> dict[str, str] | None: ...


class CredentialStore:
    def __init__(self, kube: SecretReader) -> None:
        self.kube = kube
        self._secrets: dict[ObjKey, SecretData | None] = {}
        self._ca_bundles: dict[ObjKey, bytes] = {}

    async def _secret(self, namespace: str, name: str) -> SecretData | None:
        key = ObjKey(namespace, name)
        if key not in self._secrets:
            self._secrets[key] = await self.kube.get_secret(namespace, name)
        return self._secrets[key]

    def forget(self, namespace: str, name: str) -> None:
        self._secrets.pop(ObjKey(namespace, name), None)
        self._ca_bundles.pop(ObjKey(namespace, name), None)

    def __len__(self) -> int:
        return len(self._secrets) + len(self._ca_bundles)

    async def _values(
        self,
        namespace: str,
        name: str,
        keys: tuple[str, ...],
        reason: str,
        may_be_empty: tuple[str, ...] = (),
    ) -> tuple[SecretData, dict[str, str]]:
        """The named keys of a Secret, or ProvisionerError(`reason`) naming what is missing (never a value).
        A missing Secret is not cached: it may be created any moment."""
        secret = await self._secret(namespace, name)
        if secret is None:
            self.forget(namespace, name)
            raise ProvisionerError(reason, f"Secret {namespace}/{name} does not exist")
        if any(secret.data.get(k) is None or (k not in may_be_empty and not secret.data[k]) for k in keys):
            self.forget(namespace, name)
            raise ProvisionerError(
                reason, f"Secret {namespace}/{name} needs the keys {', '.join(f'`{k}`' for k in keys)}"
            )
        return secret, {k: secret.data[k].decode() for k in keys}

    async def bmc(self, target: Target) -> tuple[str, str, str]:
        ns, name = target.key.namespace, target.spec.bmc.credentialsName
        secret, values = await self._values(
            ns, name, ("username", "password"), "CredentialsSecretMissing", may_be_empty=("password",)
        )
        if not bound_to_host(secret, target.key.name, target.uid):
            self.forget(ns, name)
            raise ProvisionerError(
                "CredentialsNotBound",
                f"Secret {ns}/{name} has no ownerReference to BareMetalHost {target.key.name}: a BMC "
                "password is only sent for the hosts its Secret is bound to (see docs/registering-hosts.md)",
            )
        return values["username"], values["password"], secret.resource_version

    async def ssh_key(self, target: Target) -> str:
        _, values = await self._values(
            target.key.namespace,
            target.spec.ssh.privateKeySecretName,
            ("ssh-privatekey",),
            "SSHKeySecretMissing",
        )
        return values["ssh-privatekey"]

    async def ca_bundle(self, target: Target) -> bytes | None:
        name = target.spec.bmc.caBundleName
        if not name:
            return None
        key = ObjKey(target.key.namespace, name)
        if key in self._ca_bundles:
            return self._ca_bundles[key]
        data = await self.kube.get_configmap(target.key.namespace, name)
        pem = (data or {}).get(CA_BUNDLE_KEY)
        if not pem:
            raise ProvisionerError(
                "TLSVerificationFailed",
                f"ConfigMap {target.key.namespace}/{name} with key `{CA_BUNDLE_KEY}` (the BMC's CA bundle) "
                "does not exist",
            )
        self._ca_bundles[key] = pem.encode()
        return self._ca_bundles[key]
