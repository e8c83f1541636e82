"""Context for RESD: the playbook, its curation, the solution buffer and reflector/curator parsing."""
