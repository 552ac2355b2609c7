"""csms"""
