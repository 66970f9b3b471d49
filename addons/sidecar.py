"""mitmdump/mitmweb entry point for a sidecar, for inspection: `mitmdump -s addons/sidecar.py
--set mesh_config=mesh.yaml --set mesh_workload=service=catalog,app=127.0.0.1:9101,address=127.0.0.3`.
"""

from addons import chain

addons = chain.sidecar()
