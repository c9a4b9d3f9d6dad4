from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class MailConfig(AppConfig):
    name = "mail"
    verbose_name = "Mail"

    def ready(self) -> None:
        from accounts.models import AccessGrant, User
        from mail.models import Folder, Mailbox, MailDomain, RuleSet
        from mail.services.directory import directory_changed

        # What the SMTP listeners remember of these (mail.services.directory) must go when
        # any of them changes.
        for model in (MailDomain, Mailbox, Folder, AccessGrant, User, RuleSet):
            uid = f"directory:{model.__name__}"
            post_save.connect(directory_changed, sender=model, dispatch_uid=f"{uid}:save")
            post_delete.connect(directory_changed, sender=model, dispatch_uid=f"{uid}:delete")
