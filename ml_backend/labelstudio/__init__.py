"""Label Studio I/O: the SDK client, image fetching under a policy, storage URLs, ``robustar import``."""
