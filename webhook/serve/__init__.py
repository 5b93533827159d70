"""The running webhook: options and start-up wiring, the HTTPS app and its wire format,
certificates and their rotation, metrics, memory."""
