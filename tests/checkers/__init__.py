"""Correctness checkers that tests run over recorded histories."""

from tests.checkers.linearizability import CheckResult, Operation, check_history

__all__ = ["CheckResult", "Operation", "check_history"]
