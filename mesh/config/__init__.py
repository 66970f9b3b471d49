"""mesh.yaml: schema, loading and the one error shape (`file:line: key.path: problem (got value)`)."""

from mesh.config.load import load, load_block, load_text
from mesh.config.schema import MeshConfig
from mesh.config.source import ConfigError, Problem

__all__ = ["ConfigError", "MeshConfig", "Problem", "load", "load_block", "load_text"]
