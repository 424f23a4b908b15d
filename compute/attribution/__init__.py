"""Weight patching: which weight changes carry the behaviour (compute.attribution.patch)."""
