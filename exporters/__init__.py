"""One file per export target; each defines ``EXPORTER`` and is listed in edgegen.registry."""
