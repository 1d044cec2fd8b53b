"""Integrations with the engines loadonce runs on: ``loadonce.integrations.ray`` (Ray Serve)."""
