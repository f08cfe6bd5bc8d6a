"""The local target: real vLLM servers on this machine and the stable pointer that says which serves."""
