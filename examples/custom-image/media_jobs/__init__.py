"""An example team's handlers, packaged into their own image FROM sfn-activity-worker."""
