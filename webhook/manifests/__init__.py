"""The offline ``inject`` and ``check`` verbs: manifests in, injected manifests out,
rewritten only where they change."""
