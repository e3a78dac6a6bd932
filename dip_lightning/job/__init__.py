"""One job of the platform: build, fit, checkpoint, survive interruptions, write the results."""
