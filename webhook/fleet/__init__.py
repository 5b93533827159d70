"""Keeping the fleet meshed after admission: audit running pods, roll what missed or outgrew its injection."""
