"""The test suite is a package, so its shared helpers import as ``tests.helpers`` from every module.

(xdsl, which ExecuTorch pulls in, installs a top-level ``tests`` namespace; a regular package here
wins over it.)
"""
