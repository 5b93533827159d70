"""Turning a decision into a change of the pod: placing (and taking off) a flavour's data
plane, and the JSON Patch between the received pod and the mutated one."""
