"""The HTTP API of sessionvault (FastAPI): the Kubernetes audit webhook, kubectl review and
session replay, all behind tenant-bound bearer tokens (:mod:`api.auth`)."""
