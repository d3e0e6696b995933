"""HTTP handlers of the emulator: IBM Cloud (IAM, search, catalog) and the Runtime API."""
