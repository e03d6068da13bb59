"""src/hms/inputs"""
