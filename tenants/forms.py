"""Forms of the operator console's own pages (creating tenants and issuing keys)."""

from django import forms

from tenants.models import Plan, Scope, Tenant
from tenants.services import DEFAULT_PLAN_NAME, MAX_KEY_LIFETIME_DAYS


class _ScopesField(forms.MultipleChoiceField):
    def __init__(self, **kwargs):
        super().__init__(choices=Scope.choices, widget=forms.CheckboxSelectMultiple, **kwargs)


class TenantOnboardingForm(forms.Form):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(max_length=63, required=False, help_text="Leave empty to derive it from the name.")
    plan = forms.ModelChoiceField(queryset=Plan.objects.order_by("name"))
    key_name = forms.CharField(max_length=100, initial="default", label="First API key's name")
    scopes = _ScopesField(initial=Scope.values, label="First API key's scopes")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["plan"].initial = Plan.objects.filter(name=DEFAULT_PLAN_NAME).first()


class ApiKeyIssueForm(forms.Form):
    tenant = forms.ModelChoiceField(
        queryset=Tenant.objects.filter(status=Tenant.Status.ACTIVE).order_by("name")
    )
    name = forms.CharField(max_length=100)
    scopes = _ScopesField(initial=[Scope.READ, Scope.ENROLL, Scope.IDENTIFY])
    expires_in_days = forms.IntegerField(
        min_value=1,
        max_value=MAX_KEY_LIFETIME_DAYS,
        required=False,
        help_text="Empty: the key does not expire.",
    )
