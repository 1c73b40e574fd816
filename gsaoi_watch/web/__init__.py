"""The live night page the daemon serves: plots of IQ, CC and BG, sequences, pictures, problems."""
