"""Tools around the suite: the kasvu command, the local launcher, the local suite used by tests
and benchmarks, the demo."""
