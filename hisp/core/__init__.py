"""Pure cores: MIME, CMS, certificates, trust, policy and the security agent. No I/O, time is a parameter."""
