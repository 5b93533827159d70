"""The decisions about a pod: its interception mode, the nodes it may run on, its proxy's
CPU and memory. Pure functions of the pod, the cluster snapshot and the policy."""
