"""mesh.yaml: schema, loading and the one error shape (`file:line: key.path: problem (got value)`)."""

from .load import load, load_block, load_text
from .schema import MeshConfig
from .source import ConfigError, Problem

__all__ = ["ConfigError", "MeshConfig", "Problem", "load", "load_block", "load_text"]
