"""Stand-ins for the programs a provisioned host runs: `cloud-init` and `kubeadm`.

They run inside a lab host's SSH sessions (see `hack/lab/hostshell.sh`), where the paths that matter
(/var/lib/cloud, /etc/kubernetes, /var/lib/kubelet, /var/log, ...) are that host's own directories. They
implement the slice of the real tools' behaviour that a Cluster API bootstrap exercises, against a real
API server, and log to the host's /var/log. The `bin/` wrappers put them on the host's PATH.
"""
