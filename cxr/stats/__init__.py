"""Pure statistics on numpy arrays: metrics with bootstrap intervals, calibration, paired and two-sample tests."""
