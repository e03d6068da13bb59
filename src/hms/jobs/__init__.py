"""src/hms/jobs"""
