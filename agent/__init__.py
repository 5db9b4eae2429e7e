"""The node agent: loads and attaches the eBPF capture programs, keeps their maps in step."""
