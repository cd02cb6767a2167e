"""The AWS provider: least-privilege deploy users, AMI bakes, reaping and pruning.

Entry points for the CLI: :func:`kiln.aws.ami.bake_ami`,
:func:`kiln.aws.images.list_amis`, :func:`kiln.aws.images.prune_amis`,
:func:`kiln.aws.reap.reap`, :func:`kiln.aws.iam.create_deploy_user` and
:func:`kiln.aws.policy.policy_document`.
"""
