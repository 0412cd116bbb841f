"""The hub engine: registry, experiments, dispatch, result ingestion, results store, HTTP API.

``Hub`` (``service.py``) wires them together; front ends talk to it only through
``HubClient`` (``client.py``).
"""
