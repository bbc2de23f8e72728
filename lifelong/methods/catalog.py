"""Re-export: the catalog lives in lifelong.catalog (torch-free; importing lifelong.methods imports torch)."""

from lifelong.catalog import CATALOG, MethodSpec, method_spec, run_spec  # noqa: F401
