"""mitmdump/mitmweb entry point for the gateway: `mitmdump -s addons/gateway.py --set mesh_config=mesh.yaml`."""

from addons import chain

addons = chain.gateway()
