"""One file per runtime, named like its export target; each defines ``RUNTIME``."""
