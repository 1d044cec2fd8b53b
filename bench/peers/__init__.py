"""The servers loadonce is compared with, each installed into its own virtual environment."""
