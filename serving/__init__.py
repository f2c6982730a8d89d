"""Decision policy, the BentoML service, batch scoring and the `nba` command line."""
