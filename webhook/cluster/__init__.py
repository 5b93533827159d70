"""The cluster as the decisions see it: a frozen snapshot, kept current by watches of the
API server (or read from a file for the dry-run verbs)."""
