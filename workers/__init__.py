"""Ray Serve teacher workers: the deployment (``workers.deployment``), its options from
``ServeSettings`` (``workers.config``) and local Ray/Serve start-up (``workers.runtime``).

Importing this package imports nothing heavy; import the submodules you need.
"""
