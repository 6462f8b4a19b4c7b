"""In-memory implementations of the service's ports (backstop.service.ports), beside the real ones: the same
contract tests run against both (tests/integration/test_contracts.py), and the simulator (tests/sim) runs the real
loops on these."""
