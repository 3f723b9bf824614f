"""Local tooling, not the service: the demo stack, a Label Studio server launcher, scripted annotation."""
