"""lepton-ctl: the operator's command-line tool, a thin layer over lepton.client."""
