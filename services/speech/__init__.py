"""The Speech service: voices and speech jobs: streaming recognition, synthesis and the voice
Converse loop."""
