"""Local emulator of the IBM Qiskit Runtime service (aiohttp server, scheduler, QPU model)."""
