"""DAMSM encoders of AttnGAN / DM-GAN (reference §1.8), with the upstream state-dict keys.

RNN_ENCODER: embedding + bidirectional LSTM; keys encoder.weight, rnn.weight_ih_l0, ...
CNN_ENCODER: the Inception-v3 trunk (written here; torchvision is not needed) to Mixed_6e for
regions and to Mixed_7c for the global code; keys Conv2d_1a_3x3.conv.weight, Mixed_5b.*, ...,
emb_features.weight, emb_cnn_code.{weight,bias}. A published DAMSM checkpoint holds the whole
trunk, so no ImageNet weights are needed. `width` < 1 narrows every layer (tests only).
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from t2i_fast.models.layers import expect


class RNN_ENCODER(nn.Module):  # noqa: N801 (upstream name)
    """captions (B, L) of token ids, cap_lens (B,) -> words (B, nhidden, max len) and
    sent (B, nhidden).

    ntoken: vocabulary; ninput: word-vector width (300); drop_prob: dropout after the
    embedding; nhidden: output width (two directions of nhidden/2); rnn_type: LSTM or GRU.
    Padded steps of words are 0. Batches need not be sorted by length.
    """

    def __init__(self, ntoken, ninput=300, drop_prob=0.5, nhidden=256, nlayers=1,
                 bidirectional=True, rnn_type="LSTM"):
        super().__init__()
        self.ntoken, self.ninput, self.nlayers = ntoken, ninput, nlayers
        self.num_directions = 2 if bidirectional else 1
        self.nhidden = nhidden // self.num_directions
        self.rnn_type = rnn_type
        self.encoder = nn.Embedding(ntoken, ninput)
        self.drop = nn.Dropout(drop_prob)
        rnn = {"LSTM": nn.LSTM, "GRU": nn.GRU}[rnn_type]
        self.rnn = rnn(ninput, self.nhidden, nlayers, batch_first=True, dropout=0.0,
                       bidirectional=bidirectional)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)

    def forward(self, captions, cap_lens, hidden=None):
        batch = captions.shape[0]
        expect(captions, (batch, None), "RNN_ENCODER captions")
        lens = torch.as_tensor(cap_lens).reshape(-1).cpu()
        if lens.numel() != batch or int(lens.min()) < 1:
            raise ValueError(f"RNN_ENCODER: cap_lens must hold {batch} lengths >= 1")
        emb = self.drop(self.encoder(captions))
        packed = pack_padded_sequence(emb, lens, batch_first=True, enforce_sorted=False)
        output, hidden = self.rnn(packed, hidden)
        words = pad_packed_sequence(output, batch_first=True)[0].transpose(1, 2)
        h_n = hidden[0] if self.rnn_type == "LSTM" else hidden
        # final state of the last layer, directions side by side: (B, nhidden)
        sent = h_n[-self.num_directions:].transpose(0, 1).reshape(batch, -1)
        return words, sent


# --------------------------------------------------------------------------------------------
# Inception-v3 trunk
# --------------------------------------------------------------------------------------------

class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)
        self.out_channels = cout

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _pool3(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1)


class InceptionA(nn.Module):
    def __init__(self, cin, pool_features, w):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, w(64), kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, w(48), kernel_size=1)
        self.branch5x5_2 = BasicConv2d(w(48), w(64), kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, w(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(w(64), w(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(w(96), w(96), kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, w(pool_features), kernel_size=1)
        self.out_channels = 2 * w(64) + w(96) + w(pool_features)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_pool3(x))], dim=1)


class InceptionB(nn.Module):
    def __init__(self, cin, w):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, w(384), kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, w(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(w(64), w(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(w(96), w(96), kernel_size=3, stride=2)
        self.out_channels = w(384) + w(96) + cin

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2)], dim=1)


class InceptionC(nn.Module):
    def __init__(self, cin, channels_7x7, w):
        super().__init__()
        c7 = w(channels_7x7)
        self.branch1x1 = BasicConv2d(cin, w(192), kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, w(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, w(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, w(192), kernel_size=1)
        self.out_channels = 4 * w(192)

    def forward(self, x):
        dbl = x
        for i in range(1, 6):
            dbl = getattr(self, f"branch7x7dbl_{i}")(dbl)
        return torch.cat([
            self.branch1x1(x), self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))), dbl,
            self.branch_pool(_pool3(x))], dim=1)


class InceptionD(nn.Module):
    def __init__(self, cin, w):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, w(192), kernel_size=1)
        self.branch3x3_2 = BasicConv2d(w(192), w(320), kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, w(192), kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(w(192), w(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(w(192), w(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(w(192), w(192), kernel_size=3, stride=2)
        self.out_channels = w(320) + w(192) + cin

    def forward(self, x):
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7,
                          F.max_pool2d(x, 3, stride=2)], dim=1)


class InceptionE(nn.Module):
    def __init__(self, cin, w):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, w(320), kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, w(384), kernel_size=1)
        self.branch3x3_2a = BasicConv2d(w(384), w(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(w(384), w(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, w(448), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(w(448), w(384), kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(w(384), w(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(w(384), w(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, w(192), kernel_size=1)
        self.out_channels = w(320) + 4 * w(384) + w(192)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(_pool3(x))], dim=1)


class CNN_ENCODER(nn.Module):  # noqa: N801 (upstream name)
    """images (B, 3, H, W) in [-1, 1] -> regions (B, nef, 17, 17), code (B, nef) at 299 input.

    nef: embedding width; width: channel multiplier of the trunk (1.0 upstream); image_size:
    the trunk's input side (299); align_corners: of the bilinear resize (DM-GAN True, AttnGAN
    False). No ImageNet mean/std, as upstream. The trunk is frozen and kept in eval mode
    (`train()` leaves it there); only emb_features and emb_cnn_code train. With
    `trunk_in_eval` False the frozen trunk follows train() as in upstream DAMSM pretraining.
    """
    trunk_in_eval = True

    def __init__(self, nef=256, width=1.0, image_size=299, align_corners=True,
                 freeze_trunk=True):
        super().__init__()
        self.nef, self.image_size, self.align_corners = nef, image_size, align_corners
        self.freeze_trunk = freeze_trunk

        def w(n):
            return max(1, int(round(n * width)))
        self.Conv2d_1a_3x3 = BasicConv2d(3, w(32), kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(w(32), w(32), kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(w(32), w(64), kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(w(64), w(80), kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(w(80), w(192), kernel_size=3)
        self.Mixed_5b = InceptionA(w(192), 32, w)
        self.Mixed_5c = InceptionA(self.Mixed_5b.out_channels, 64, w)
        self.Mixed_5d = InceptionA(self.Mixed_5c.out_channels, 64, w)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, w)
        self.Mixed_6b = InceptionC(self.Mixed_6a.out_channels, 128, w)
        self.Mixed_6c = InceptionC(self.Mixed_6b.out_channels, 160, w)
        self.Mixed_6d = InceptionC(self.Mixed_6c.out_channels, 160, w)
        self.Mixed_6e = InceptionC(self.Mixed_6d.out_channels, 192, w)
        self.Mixed_7a = InceptionD(self.Mixed_6e.out_channels, w)
        self.Mixed_7b = InceptionE(self.Mixed_7a.out_channels, w)
        self.Mixed_7c = InceptionE(self.Mixed_7b.out_channels, w)
        self.emb_features = nn.Conv2d(self.Mixed_6e.out_channels, nef, 1, bias=False)
        self.emb_cnn_code = nn.Linear(self.Mixed_7c.out_channels, nef)
        nn.init.uniform_(self.emb_features.weight, -0.1, 0.1)
        nn.init.uniform_(self.emb_cnn_code.weight, -0.1, 0.1)
        if freeze_trunk:
            for name, p in self.named_parameters():
                p.requires_grad_(name.startswith("emb_"))
        self.train()

    def train(self, mode=True):
        super().train(mode)
        if self.freeze_trunk and self.trunk_in_eval:   # BN statistics stay the checkpoint's
            for name, child in self.named_children():
                if not name.startswith("emb_"):
                    child.eval()
        return self

    def forward(self, x):
        expect(x, (None, 3, None, None), "CNN_ENCODER images")
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                          align_corners=self.align_corners)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e"):
            x = getattr(self, f"Mixed_{name}")(x)
        features = x                                                  # (B, 768, 17, 17)
        for name in ("7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        code = x.mean(dim=(2, 3))   # = avg_pool2d(kernel 8) on the 8x8 map at 299 input
        return self.emb_features(features), self.emb_cnn_code(code)

    def encode_image(self, images):
        """The image-encoder interface shared with the ITM: (regions, code)."""
        return self(images)
