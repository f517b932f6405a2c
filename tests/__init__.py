"""The test suite, a package so that its shared helpers (:mod:`tests.helpers`) and the modules
that stand in for a user's code (``tests.fault_rewards``, ``tests.estimator_examples``) import
by their dotted names, in pytest and in the processes the tests launch."""
