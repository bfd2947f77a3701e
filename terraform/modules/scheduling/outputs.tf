output "schedule_group_name" {
  description = "Schedule group holding the pixelpipe schedules."
  value       = aws_scheduler_schedule_group.this.name
}

output "schedule_group_arn" {
  description = "ARN of the schedule group (the scheduler role trusts only this group)."
  value       = aws_scheduler_schedule_group.this.arn
}

output "schedule_names" {
  description = "Schedule name per job: nightly-retraining, weekly-performance-suite."
  value       = { for job, schedule in aws_scheduler_schedule.this : job => schedule.name }
}

output "schedule_arns" {
  description = "Schedule ARN per job."
  value       = { for job, schedule in aws_scheduler_schedule.this : job => schedule.arn }
}
