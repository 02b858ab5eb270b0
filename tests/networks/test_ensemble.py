"""Ensembles: trained copies of one network run as one, their logits averaged, their weights in one state dict."""

from __future__ import annotations

import pytest
import torch

from medseg.networks import (
    Ensemble, IncompatibleMember, UNet, ensemble_of, ensemble_size, ensemble_state_dict, member_state_dict,
)

FEATURES = (4, 8, 16)


def trained_like(seed: int) -> UNet:
    """A small U-Net with its own random weights, as an independent training run would leave it."""
    torch.manual_seed(seed)
    return UNet(spatial_dims=2, in_channels=3, out_channels=1, features=FEATURES).eval()


def test_the_ensemble_returns_the_mean_of_its_members_logits():
    members = [trained_like(seed) for seed in (0, 1, 2)]
    x = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        expected = torch.stack([member(x) for member in members]).mean(0)
        logits = Ensemble(members).eval()(x)
    assert logits.shape == (2, 1, 32, 40)
    torch.testing.assert_close(logits, expected)


def test_one_member_is_the_network_itself_so_its_weights_load_unchanged():
    network = trained_like(0)
    assert ensemble_of(network, 1) is network
    assert ensemble_state_dict([network.state_dict()]).keys() == network.state_dict().keys()
    assert ensemble_size(network.state_dict()) == 1


def test_the_weights_of_separately_trained_networks_load_into_an_ensemble_of_copies():
    members = [trained_like(seed) for seed in (0, 1)]
    weights = ensemble_state_dict([member.state_dict() for member in members])
    assert ensemble_size(weights) == 2
    ensemble = ensemble_of(trained_like(5), 2).eval()
    ensemble.load_state_dict(weights)
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(ensemble(x), (members[0](x) + members[1](x)) / 2)


def test_each_members_weights_come_back_out_of_the_ensembles():
    members = [trained_like(seed) for seed in (0, 1)]
    weights = ensemble_state_dict([member.state_dict() for member in members])
    for k, member in enumerate(members):
        alone = member_state_dict(weights, k)
        assert alone.keys() == member.state_dict().keys()
        assert all(torch.equal(alone[name], value) for name, value in member.state_dict().items())
    with pytest.raises(ValueError, match="no member 2 in weights of 2 networks"):
        member_state_dict(weights, 2)
    with pytest.raises(ValueError, match="no member 0 in weights of 1 network"):
        member_state_dict(members[0].state_dict(), 0)


def test_copies_are_independent_networks():
    ensemble = ensemble_of(trained_like(0), 2)
    first, second = ensemble.members
    with torch.no_grad():
        next(first.parameters()).add_(1.0)
    assert not torch.equal(next(first.parameters()), next(second.parameters()))


def test_an_ensemble_is_not_a_member_of_another():
    weights = ensemble_state_dict([trained_like(0).state_dict(), trained_like(1).state_dict()])
    with pytest.raises(IncompatibleMember, match="already hold an ensemble") as raised:
        ensemble_state_dict([trained_like(2).state_dict(), weights])
    assert raised.value.member == 1


def test_members_are_copies_of_one_network():
    other = UNet(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 8, 32)).state_dict()
    with pytest.raises(IncompatibleMember, match="not the same network") as raised:
        ensemble_state_dict([trained_like(0).state_dict(), trained_like(1).state_dict(), other])
    assert raised.value.member == 2


def test_a_network_with_a_members_attribute_is_not_taken_for_an_ensemble():
    assert ensemble_size({"members.weight": torch.zeros(1), "members.0.bias": torch.zeros(1)}) == 1


def test_an_ensemble_needs_a_member():
    with pytest.raises(ValueError, match="at least"):
        ensemble_of(trained_like(0), 0)
    with pytest.raises(ValueError, match="at least one"):
        Ensemble([])


def test_an_ensemble_traces_like_its_members():
    ensemble = ensemble_of(trained_like(0), 2).eval()
    x = torch.randn(1, 3, 32, 32)
    traced = torch.jit.trace(ensemble, x)
    other = torch.randn(1, 3, 48, 48)
    torch.testing.assert_close(traced(other), ensemble(other))
