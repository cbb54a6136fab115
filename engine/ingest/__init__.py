"""Ingest: the first stage of the flow. ``parse`` turns lines into validated records; the store's
batch writer scores them."""
